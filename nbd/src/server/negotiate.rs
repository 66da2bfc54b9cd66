//! The handshake: the greeting, then the client's options, one handler each (`NBD_OPT_*` as the
//! protocol document names them), until it chooses an export, gives up, or sends too many.

use super::{Config, Device, Exports, Haggle, MAX_OPTION_DATA, MAX_OPTIONS};
use crate::client::Stream;
use crate::error::{Error, Result};
use crate::proto;
use crate::wire::{self, OptionRequest};

/// The export chosen, its device, and what was negotiated.
pub(super) type Chosen = (String, Box<dyn Device>, Haggle);

/// The id of `base:allocation` in this server's replies.
pub(super) const ALLOCATION_ID: u32 = 1;

/// What an option leads to.
enum Next {
    /// More options.
    Options,
    /// The transmission phase, on this export.
    Transmit(Chosen),
    /// The end of the session (the client gave up, or must be closed on).
    Close,
}

/// One client's handshake.
struct Negotiation<'a> {
    exports: &'a dyn Exports,
    config: &'a Config,
    log: &'a (dyn Fn(&str) + Sync),
    haggle: Haggle,
    /// Whether TLS runs (or is not required).
    secure: bool,
}

/// Negotiates with the client on `stream` (which STARTTLS replaces with its TLS stream):
/// `None` when the session ends before an export is chosen.
pub(super) fn negotiate(
    stream: &mut Box<dyn Stream>,
    exports: &dyn Exports,
    config: &Config,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Option<Chosen>> {
    let no_zeroes = greet(&mut **stream)?;
    let mut n = Negotiation {
        exports,
        config,
        log,
        haggle: Haggle::new(no_zeroes),
        secure: config.tls.is_none(),
    };
    for _ in 0..MAX_OPTIONS {
        let opt = match wire::read_option(&mut **stream, MAX_OPTION_DATA) {
            Ok(o) => o,
            Err(Error::Protocol(what)) if what.contains("more than the") => {
                return Err(Error::Protocol(format!("option data too long: {what}")));
            }
            Err(e) => return Err(e),
        };
        let next = if opt.option == proto::OPT_STARTTLS {
            n.starttls(stream, &opt)?
        } else {
            n.option(&mut **stream, opt)?
        };
        match next {
            Next::Options => {}
            Next::Transmit(chosen) => return Ok(Some(chosen)),
            Next::Close => return Ok(None),
        }
    }
    Err(Error::Protocol(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

/// The fixed newstyle greeting, and the client's flags: whether it asked for no zeroes.
fn greet(s: &mut dyn Stream) -> Result<bool> {
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
    Ok(client & proto::FLAG_C_NO_ZEROES != 0)
}

impl Haggle {
    fn new(no_zeroes: bool) -> Self {
        Self {
            structured: false,
            allocation_for: None,
            no_zeroes,
        }
    }
}

fn reply(s: &mut dyn Stream, opt: &OptionRequest, rep: u32, data: &[u8]) -> Result<()> {
    wire::write_option_reply(s, opt.option, rep, data)
}

/// The transmission flags of `device` as negotiated.
pub(super) fn transmission_flags(device: &dyn Device, config: &Config, structured: bool) -> u16 {
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

impl Negotiation<'_> {
    /// An error reply, logged.
    fn error(
        &self,
        s: &mut dyn Stream,
        opt: &OptionRequest,
        rep: u32,
        message: &str,
    ) -> Result<Next> {
        (self.log)(&format!("option {} refused: {message}", opt.option));
        wire::write_option_reply(s, opt.option, rep, message.as_bytes())?;
        Ok(Next::Options)
    }

    /// Every option but STARTTLS.
    fn option(&mut self, s: &mut dyn Stream, opt: OptionRequest) -> Result<Next> {
        // FORCEDTLS: nothing but TLS (or giving up) before TLS.
        if !self.secure && opt.option != proto::OPT_ABORT {
            if opt.option == proto::OPT_EXPORT_NAME {
                (self.log)("NBD_OPT_EXPORT_NAME before TLS: closed (this server requires TLS)");
                return Ok(Next::Close);
            }
            return self.error(
                s,
                &opt,
                proto::REP_ERR_TLS_REQD,
                "this server requires TLS: NBD_OPT_STARTTLS first",
            );
        }
        match opt.option {
            proto::OPT_EXPORT_NAME => self.export_name(s, opt),
            proto::OPT_ABORT => {
                let _ = reply(s, &opt, proto::REP_ACK, &[]);
                Ok(Next::Close)
            }
            proto::OPT_LIST => self.list(s, &opt),
            proto::OPT_STRUCTURED_REPLY => self.structured_reply(s, &opt),
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                self.meta_context(s, &opt)
            }
            proto::OPT_INFO | proto::OPT_GO => self.info_or_go(s, opt),
            other => {
                // Clients probe for newer options (qemu asks for extended headers): not worth
                // a log line.
                let message = format!("option {other} is not supported");
                reply(s, &opt, proto::REP_ERR_UNSUP, message.as_bytes())?;
                Ok(Next::Options)
            }
        }
    }

    /// `NBD_OPT_STARTTLS`: the stream becomes a TLS stream; nothing negotiated before carries
    /// over.
    fn starttls(&mut self, stream: &mut Box<dyn Stream>, opt: &OptionRequest) -> Result<Next> {
        let s = &mut **stream;
        let Some(tls) = self.config.tls.clone() else {
            return self.error(
                s,
                opt,
                proto::REP_ERR_UNSUP,
                "this server has no TLS configured",
            );
        };
        if self.secure {
            return self.error(s, opt, proto::REP_ERR_INVALID, "TLS is already running");
        }
        if !opt.data.is_empty() {
            return self.error(
                s,
                opt,
                proto::REP_ERR_INVALID,
                "NBD_OPT_STARTTLS takes no data",
            );
        }
        reply(s, opt, proto::REP_ACK, &[])?;
        let plain = std::mem::replace(stream, Box::new(std::io::empty()));
        *stream = crate::tls::accept(tls, plain)?;
        self.secure = true;
        self.haggle = Haggle::new(self.haggle.no_zeroes);
        Ok(Next::Options)
    }

    /// `NBD_OPT_EXPORT_NAME`: the old way to choose an export. It has no error reply: the
    /// protocol says to close.
    fn export_name(&mut self, s: &mut dyn Stream, opt: OptionRequest) -> Result<Next> {
        let name = String::from_utf8(opt.data)
            .map_err(|_| Error::Protocol("an export name that is not UTF-8".into()))?;
        let Some((canonical, _)) = self.exports.find(&name) else {
            (self.log)(&format!("NBD_OPT_EXPORT_NAME: no export {name:?}"));
            return Ok(Next::Close);
        };
        let device = match self.exports.open(&canonical) {
            Ok(d) => d,
            Err(e) => {
                (self.log)(&format!("export {canonical:?} cannot be opened: {e}"));
                return Ok(Next::Close);
            }
        };
        let flags = transmission_flags(&*device, self.config, self.haggle.structured);
        let zeroes = [0u8; proto::EXPORT_NAME_PADDING];
        let pad: &[u8] = if self.haggle.no_zeroes { &[] } else { &zeroes };
        wire::write_all(
            s,
            &[&device.size().to_be_bytes(), &flags.to_be_bytes(), pad],
            "the export's size",
        )?;
        let haggle = Haggle {
            structured: self.haggle.structured,
            allocation_for: self.haggle.allocation_for.take(),
            no_zeroes: self.haggle.no_zeroes,
        };
        Ok(Next::Transmit((canonical, device, haggle)))
    }

    /// `NBD_OPT_LIST`: every export, with its description.
    fn list(&self, s: &mut dyn Stream, opt: &OptionRequest) -> Result<Next> {
        if !opt.data.is_empty() {
            return self.error(s, opt, proto::REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        }
        for (name, description) in self.exports.list() {
            let mut d = Vec::with_capacity(4 + name.len() + description.len());
            d.extend_from_slice(&(name.len() as u32).to_be_bytes());
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(description.as_bytes());
            reply(s, opt, proto::REP_SERVER, &d)?;
        }
        reply(s, opt, proto::REP_ACK, &[])?;
        Ok(Next::Options)
    }

    /// `NBD_OPT_STRUCTURED_REPLY`.
    fn structured_reply(&mut self, s: &mut dyn Stream, opt: &OptionRequest) -> Result<Next> {
        if !opt.data.is_empty() {
            return self.error(
                s,
                opt,
                proto::REP_ERR_INVALID,
                "NBD_OPT_STRUCTURED_REPLY takes no data",
            );
        }
        if self.haggle.structured {
            return self.error(
                s,
                opt,
                proto::REP_ERR_INVALID,
                "structured replies are negotiated already",
            );
        }
        self.haggle.structured = true;
        reply(s, opt, proto::REP_ACK, &[])?;
        Ok(Next::Options)
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: `base:allocation` is the
    /// one context this server has.
    fn meta_context(&mut self, s: &mut dyn Stream, opt: &OptionRequest) -> Result<Next> {
        let set = opt.option == proto::OPT_SET_META_CONTEXT;
        if set {
            self.haggle.allocation_for = None;
        }
        if !self.haggle.structured {
            return self.error(
                s,
                opt,
                proto::REP_ERR_INVALID,
                "metadata contexts need structured replies first",
            );
        }
        let (name, queries) = match wire::parse_meta_context(&opt.data) {
            Ok(v) => v,
            Err(e) => return self.error(s, opt, proto::REP_ERR_INVALID, &e.to_string()),
        };
        let Some((canonical, _)) = self.exports.find(&name) else {
            return self.error(
                s,
                opt,
                proto::REP_ERR_UNKNOWN,
                &format!("no export {name:?}"),
            );
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
            reply(s, opt, proto::REP_META_CONTEXT, &d)?;
            if set {
                self.haggle.allocation_for = Some(canonical);
            }
        }
        reply(s, opt, proto::REP_ACK, &[])?;
        Ok(Next::Options)
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`: the export's size, flags, block sizes, name and
    /// description; GO then chooses it.
    fn info_or_go(&mut self, s: &mut dyn Stream, opt: OptionRequest) -> Result<Next> {
        let (name, infos) = match wire::parse_go(&opt.data) {
            Ok(v) => v,
            Err(e) => return self.error(s, &opt, proto::REP_ERR_INVALID, &e.to_string()),
        };
        let Some((canonical, description)) = self.exports.find(&name) else {
            return self.error(
                s,
                &opt,
                proto::REP_ERR_UNKNOWN,
                &format!("no export {name:?}"),
            );
        };
        let device = match self.exports.open(&canonical) {
            Ok(d) => d,
            Err(e) => return self.error(s, &opt, proto::REP_ERR_UNKNOWN, &e),
        };
        let flags = transmission_flags(&*device, self.config, self.haggle.structured);
        let mut export = proto::INFO_EXPORT.to_be_bytes().to_vec();
        export.extend_from_slice(&device.size().to_be_bytes());
        export.extend_from_slice(&flags.to_be_bytes());
        reply(s, &opt, proto::REP_INFO, &export)?;
        let mut block = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [1u32, 4096, self.config.max_payload] {
            block.extend_from_slice(&v.to_be_bytes());
        }
        reply(s, &opt, proto::REP_INFO, &block)?;
        if infos.contains(&proto::INFO_NAME) || canonical != name {
            let mut d = proto::INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(canonical.as_bytes());
            reply(s, &opt, proto::REP_INFO, &d)?;
        }
        if infos.contains(&proto::INFO_DESCRIPTION) && !description.is_empty() {
            let mut d = proto::INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(description.as_bytes());
            reply(s, &opt, proto::REP_INFO, &d)?;
        }
        reply(s, &opt, proto::REP_ACK, &[])?;
        if opt.option != proto::OPT_GO {
            return Ok(Next::Options);
        }
        let haggle = Haggle {
            structured: self.haggle.structured,
            allocation_for: self.haggle.allocation_for.take(),
            no_zeroes: self.haggle.no_zeroes,
        };
        Ok(Next::Transmit((canonical, device, haggle)))
    }
}
