//! HTTP(S) sources: a disk streamed by a web server, as XAPI exports a VDI
//! (`GET /export_raw_vdi?vdi=UUID&format=vhd[&base=UUID]` gives a dynamic VHD, or with `base`
//! a differencing VHD of what changed since that snapshot). The body is read as stdin is
//! (a VHD or a raw image, detected; never held whole in memory).
//!
//! - **TLS** with certificate checks: the system's roots, or the CA file given
//!   (`--ca-file`); `--insecure` trusts any certificate (a self-signed host one has not got the
//!   certificate of), and says so.
//! - **Redirects** are followed (XAPI answers 302 to the host that sees the storage), up to 10;
//!   credentials go to the first host only (a redirect to another host or port drops them, as
//!   it must), so a redirect that needs them carries its own (XAPI's `session_id`).
//! - **Credentials** from [`HttpOptions`] (`--http-user` with `CAIRN_HTTP_PASSWORD`, which
//!   win) or from the URL's user-info (its password, or `CAIRN_HTTP_PASSWORD` when it has
//!   none), sent as basic authentication. Neither a point nor a message shows them: the URL is
//!   recorded and shown without user-info and without its query (which may hold a session id).
//! - **A dropped transfer** is an error, never a short disk: a body shorter than its
//!   `Content-Length` fails the backup, and a stalled one fails after the timeout.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// How to reach an HTTP(S) source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// The user for basic authentication (else the URL's user-info, if any).
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// A PEM file of certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Trust any certificate.
    pub insecure: bool,
}

/// How long a read of the body may stall.
const STALL: Duration = Duration::from_secs(60);

/// Whether `s` is an HTTP(S) URL.
#[must_use]
pub fn is_http_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// `source` as messages may show it: an HTTP(S) URL without its user-info and query (which
/// may hold a password or a session id); anything else as it is.
#[must_use]
pub fn redacted(source: &str) -> String {
    match reqwest::Url::parse(source) {
        Ok(u) if is_http_url(source) => shown_url(&u),
        _ => source.to_owned(),
    }
}

/// The URL as a point records it: no user-info, no query.
pub(crate) fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

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
    let refused = |what: String| Error::Refused(what);
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| refused(format!("{url}: not a URL: {e}")))?;
    let shown = shown_url(&parsed);
    // --http-user (with CAIRN_HTTP_PASSWORD) wins; else the URL's own user-info, its
    // password from the URL or, when it has none, from CAIRN_HTTP_PASSWORD.
    let (mut user, mut password) = (options.user.clone(), options.password.clone());
    if !parsed.username().is_empty() {
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| refused(format!("{shown}: bad escape in the user-info")))
        };
        if user.is_none() {
            user = Some(decode(parsed.username())?);
            if let Some(p) = parsed.password() {
                password = Some(decode(p)?);
            }
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
    }
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(STALL)
        .redirect(reqwest::redirect::Policy::limited(10))
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &options.ca_file {
        let pem = std::fs::read(ca).map_err(|e| Error::Io {
            path: ca.clone(),
            offset: 0,
            what: "reading the CA file",
            source: e,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| refused(format!("{}: not PEM certificates: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(refused(format!("{}: holds no certificate", ca.display())));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if options.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder
        .build()
        .map_err(|e| refused(format!("{shown}: setting up HTTPS: {e}")))?;
    let mut request = client.get(parsed);
    if let Some(u) = user {
        request = request.basic_auth(u, password);
    }
    let response = request.send().map_err(|e| {
        let mut what = format!("{shown}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            what.push_str(&format!(": {s}"));
            source = s.source();
        }
        if what.contains("certificate") || what.contains("UnknownIssuer") {
            what.push_str(
                " (give the server's CA with --ca-file, or --insecure to trust any certificate)",
            );
        }
        refused(what)
    })?;
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => {
                " (check the credentials: --http-user and CAIRN_HTTP_PASSWORD, or the URL's user-info)"
            }
            404 => " (is the VDI or file there?)",
            _ => "",
        };
        return Err(refused(format!(
            "{shown}: the server answered {status}{hint}; nothing was stored"
        )));
    }
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

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_records_no_secret() {
        let u = reqwest::Url::parse(
            "https://root:s3cret@xcp1:443/export_raw_vdi?vdi=abc&session_id=OpaqueRef:1",
        )
        .expect("url");
        let s = shown_url(&u);
        assert_eq!(s, "https://xcp1/export_raw_vdi");
        assert!(!s.contains("s3cret") && !s.contains("OpaqueRef"));
    }
}
