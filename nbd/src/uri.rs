//! NBD URIs, as the NBD URI specification (`doc/uri.md`) writes them:
//! `nbd://HOST[:PORT]/EXPORT`, `nbds://HOST[:PORT]/EXPORT` (TLS), and
//! `nbd+unix:///EXPORT?socket=PATH` (`nbds+unix` with TLS). The export name is the path
//! after the first `/`, percent-decoded (XAPI's names hold a `?`: write it `%3F`); the port is
//! 10809 unless given; a host may be an IPv6 address in brackets.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::proto::DEFAULT_PORT;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP host and port.
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Where the server is.
    pub address: Address,
    /// The export's name (may be empty: the default export).
    pub export: String,
    /// Whether the connection must use TLS.
    pub tls: bool,
}

/// Whether `s` looks like an NBD URI (so a caller can tell it from a file name).
#[must_use]
pub fn is_nbd_uri(s: &str) -> bool {
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Decodes `%XX` escapes, strictly: a `%` not followed by two hex digits is refused (the
/// `percent-encoding` crate would pass it through), as is a name that is not UTF-8.
fn percent_decode(s: &str, uri: &str) -> Result<String> {
    let bad = |what: &str| Error::Uri {
        uri: uri.to_owned(),
        what: what.to_owned(),
    };
    let escapes_whole = s
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !escapes_whole {
        return Err(bad("a % not followed by two hex digits"));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| bad("the export name is not UTF-8 once decoded"))
}

impl Uri {
    /// Parses an NBD URI.
    ///
    /// # Errors
    /// Another scheme, a missing host or socket, a bad port, a bad percent escape.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |what: String| Error::Uri {
            uri: uri.to_owned(),
            what,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("not an NBD URI (nbd://HOST/EXPORT)".into()))?;
        let (tls, unix) = match scheme {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            other => {
                return Err(bad(format!(
                    "scheme {other:?}: nbd, nbds, nbd+unix or nbds+unix expected"
                )));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path, uri)?;
        let mut socket = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "socket" {
                socket = Some(PathBuf::from(percent_decode(v, uri)?));
            }
        }
        let address = if unix {
            if !authority.is_empty() {
                return Err(bad(
                    "a unix socket URI has no host: nbd+unix:///EXPORT?socket=PATH".into(),
                ));
            }
            Address::Unix(socket.ok_or_else(|| bad("no ?socket=PATH given".into()))?)
        } else {
            if authority.is_empty() {
                return Err(bad("no host given".into()));
            }
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 address without its closing ]".into()))?;
                (h, after.strip_prefix(':'))
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (authority, None),
                }
            };
            let port =
                match port {
                    None => DEFAULT_PORT,
                    Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
                        bad(format!("port {p:?} is not a number from 1 to 65535"))
                    })?,
                };
            Address::Tcp {
                host: host.to_owned(),
                port,
            }
        };
        Ok(Self {
            address,
            export,
            tls,
        })
    }
}

impl std::fmt::Display for Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.tls { "s" } else { "" };
        let name: String = self
            .export
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~/@:".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        match &self.address {
            Address::Tcp { .. } => write!(f, "nbd{s}://{}/{name}", self.address),
            Address::Unix(p) => write!(f, "nbd{s}+unix:///{name}?socket={}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = Uri::parse("nbd://127.0.0.1:10900/disk").expect("uri");
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(u.export, "disk");
        assert!(!u.tls);
        let u = Uri::parse("nbds://xcp-host/%2Fabc%3Fsession_id%3DOpaqueRef").expect("uri");
        assert_eq!(u.export, "/abc?session_id=OpaqueRef");
        assert!(u.tls);
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "xcp-host".into(),
                port: 10809
            }
        );
        let u = Uri::parse("nbd+unix:///disk?socket=/tmp/x.sock").expect("uri");
        assert_eq!(u.address, Address::Unix("/tmp/x.sock".into()));
        let u = Uri::parse("nbd://[::1]:99/").expect("uri");
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        assert_eq!(u.export, "");
        for bad in [
            "http://x/y",
            "nbd:///disk",
            "nbd+unix:///disk",
            "nbd://h:0/d",
            "nbd://h:99999/d",
            "nbd://h/%zz",
            "nbd+unix://host/d?socket=/s",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn escapes_decode_strictly() {
        let u = Uri::parse("nbd://h/%41b%2Fc").expect("uri");
        assert_eq!(u.export, "Ab/c");
        for bad in ["nbd://h/%zz", "nbd://h/a%2", "nbd://h/%", "nbd://h/%ff%fe"] {
            assert!(
                matches!(Uri::parse(bad), Err(Error::Uri { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "nbd://127.0.0.1:10900/disk",
            "nbd+unix:///a%20b?socket=/tmp/s",
            "nbds://[::1]:5/x%3Fy",
        ] {
            let u = Uri::parse(s).expect("uri");
            assert_eq!(Uri::parse(&u.to_string()).expect("again"), u, "{s}");
        }
    }
}
