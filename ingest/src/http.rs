//! HTTP(S) sources: a disk streamed by a web server, as XAPI exports a VDI
//! (`GET /export_raw_vdi?vdi=UUID&format=vhd[&base=UUID]` gives a dynamic VHD, or with `base`
//! a differencing VHD of what changed since that snapshot). The body is read as stdin is
//! (a VHD or a raw image, detected; never held whole in memory).
//!
//! TLS, redirects and credentials are `cairn-http`'s ([`cairn_http::Endpoint`]): certificates
//! checked, credentials sent to the first host only and never shown or recorded.
//! **A dropped transfer** is an error, never a short disk: a body shorter than its
//! `Content-Length` fails the backup, and a stalled one fails after the timeout.

use std::io::Read;
use std::time::Duration;

use crate::{Error, Result};

pub use cairn_http::{HttpOptions, is_http_url, redacted};

/// How long a read of the body may stall.
const STALL: Duration = Duration::from_secs(60);

/// The body of a response, checked against its `Content-Length`.
struct Body {
    response: reqwest::blocking::Response,
    shown: String,
    length: Option<u64>,
    read: u64,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.response.read(buf).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: the transfer failed after {} bytes: {e}",
                    self.shown, self.read
                ),
            )
        })?;
        self.read += n as u64;
        if n == 0
            && let Some(len) = self.length
            && self.read < len
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: the transfer ended after {} of the {len} bytes announced",
                    self.shown, self.read
                ),
            ));
        }
        Ok(n)
    }
}

/// Starts the download of `url`; returns its body and the URL as a point records it.
///
/// # Errors
/// A bad URL or CA file, a server that cannot be reached, a certificate that does not check,
/// a status other than 200.
pub(crate) fn open(url: &str, options: &HttpOptions) -> Result<(Box<dyn Read + Send>, String)> {
    let endpoint = cairn_http::Endpoint::new(url, options, Some(STALL))?;
    let shown = endpoint.shown().to_owned();
    let response = endpoint
        .send(endpoint.request(reqwest::Method::GET))
        .map_err(|e| match e {
            cairn_http::Error::Refused(what) if what.contains("the server answered") => {
                Error::Refused(format!("{what}; nothing was stored"))
            }
            e => e.into(),
        })?;
    let length = response.content_length();
    Ok((
        Box::new(Body {
            response,
            shown: shown.clone(),
            length,
            read: 0,
        }),
        shown,
    ))
}
