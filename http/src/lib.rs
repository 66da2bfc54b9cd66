//! HTTP(S) endpoints outside cairn: a disk read from a web server (XAPI's `export_raw_vdi`) or
//! written to one (XAPI's `import_raw_vdi`, a PUT of a VHD). This crate knows nothing of
//! stores or disks: it prepares a request to a URL the user gave, the same way for every
//! caller.
//!
//! - **TLS** with certificate checks: the system's roots plus the CA file given
//!   ([`HttpOptions::ca_file`]); [`HttpOptions::insecure`] trusts any certificate (a
//!   self-signed host one has not got the certificate of), and the caller says so.
//! - **Redirects** are followed (XAPI answers 302 to the host that sees the storage), up to 10;
//!   credentials go to the first host only (a redirect to another host or port drops them, as
//!   it must), so a redirect that needs them carries its own (XAPI's `session_id`).
//! - **Credentials** from [`HttpOptions`] (a user with its password, which win) or from the
//!   URL's user-info (its password, or [`HttpOptions::password`] when it has none), sent as
//!   basic authentication. No message shows them: a URL is shown without user-info and without
//!   its query (which may hold a session id), by [`redacted`].

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong preparing or sending a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file the options name could not be read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A bad URL, CA file or answer; the message names the URL (redacted).
    #[error("{0}")]
    Refused(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach an HTTP(S) endpoint.
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

/// Whether `s` is an HTTP(S) URL.
#[must_use]
pub fn is_http_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// `s` as messages may show it: an HTTP(S) URL without its user-info and query (which may hold
/// a password or a session id); anything else as it is.
#[must_use]
pub fn redacted(s: &str) -> String {
    match reqwest::Url::parse(s) {
        Ok(u) if is_http_url(s) => shown_url(&u),
        _ => s.to_owned(),
    }
}

/// The URL without user-info and query.
fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// A URL made ready for requests: its client (TLS, redirects, timeouts), its credentials taken
/// out of it, and how it is shown.
#[derive(Debug)]
pub struct Endpoint {
    client: reqwest::blocking::Client,
    url: reqwest::Url,
    auth: Option<(String, Option<String>)>,
    shown: String,
}

impl Endpoint {
    /// Prepares `url`: `stall` bounds how long a request may go without progress (`None`: a
    /// request may take as long as its body does).
    ///
    /// # Errors
    /// A bad URL, a bad escape in its user-info, a CA file that cannot be read or holds no
    /// certificate.
    pub fn new(url: &str, options: &HttpOptions, stall: Option<Duration>) -> Result<Self> {
        let refused = |what: String| Error::Refused(what);
        let mut parsed =
            reqwest::Url::parse(url).map_err(|e| refused(format!("{url}: not a URL: {e}")))?;
        let shown = shown_url(&parsed);
        // The options' user (with its password) wins; else the URL's own user-info, its
        // password from the URL or, when it has none, from the options.
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
            .timeout(stall)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &options.ca_file {
            let pem = std::fs::read(ca).map_err(|source| Error::Io {
                path: ca.clone(),
                what: "reading the CA file",
                source,
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
        Ok(Self {
            client,
            url: parsed,
            auth: user.map(|u| (u, password)),
            shown,
        })
    }

    /// The URL as messages and records show it (see [`redacted`]).
    #[must_use]
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A request to the URL, with the credentials.
    pub fn request(&self, method: reqwest::Method) -> reqwest::blocking::RequestBuilder {
        let r = self.client.request(method, self.url.clone());
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, p.as_ref()),
            None => r,
        }
    }

    /// Sends `request`; an answer other than 2xx is an error naming the status, with a hint
    /// for the usual ones.
    ///
    /// # Errors
    /// A server that cannot be reached, a certificate that does not check, a transfer that
    /// fails, a status other than 2xx.
    pub fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let response = request.send().map_err(|e| self.failed(&e))?;
        let status = response.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => {
                    " (check the credentials: --http-user and CAIRN_HTTP_PASSWORD, or the URL's \
                     user-info)"
                }
                404 => " (is the VDI or file there?)",
                _ => "",
            };
            let said = response.text().unwrap_or_default();
            let said = said.trim();
            // A short plain message is worth showing (XAPI's say what failed); a page is not.
            let said = if said.is_empty() || said.len() > 400 || said.starts_with('<') {
                String::new()
            } else {
                format!(": {said}")
            };
            return Err(Error::Refused(format!(
                "{}: the server answered {status}{said}{hint}",
                self.shown
            )));
        }
        Ok(response)
    }

    /// Why the endpoint cannot be reached, if it cannot (a refused connection, a certificate
    /// that does not check): asked after a streamed upload failed, whose own error then only
    /// says that its body could not be sent. Any answer, whatever its status, is `None`.
    #[must_use]
    pub fn unreachable(&self) -> Option<Error> {
        match self.request(reqwest::Method::OPTIONS).send() {
            Ok(_) => None,
            Err(e) => Some(self.failed(&e)),
        }
    }

    /// A transport error as a message: the whole chain of causes, and what to do about a
    /// certificate that did not check. The URL in it is the shown one (reqwest's own would
    /// carry the query, which may hold a session id).
    fn failed(&self, e: &reqwest::Error) -> Error {
        let mut what = format!("{}: {}", self.shown, DisplayWithoutUrl(e));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            what.push_str(&format!(": {s}"));
            source = s.source();
        }
        if what.contains("certificate") || what.contains("UnknownIssuer") {
            what.push_str(
                " (give the server's CA with --ca-file, or --insecure to trust any certificate)",
            );
        }
        Error::Refused(what)
    }
}

/// A reqwest error without the URL it names.
struct DisplayWithoutUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for DisplayWithoutUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        if let Some(url) = self.0.url() {
            text = text.replace(&format!(" for url ({url})"), "");
            text = text.replace(url.as_str(), "(url)");
        }
        f.write_str(&text)
    }
}

/// Decodes `%XX` escapes, strictly: `None` for a `%` not followed by two hex digits (the
/// `percent-encoding` crate would pass it through) or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let escapes_whole = s
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    escapes_whole.then_some(())?;
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_holds_no_secret() {
        let s =
            redacted("https://root:s3cret@xcp1:443/export_raw_vdi?vdi=abc&session_id=OpaqueRef:1");
        assert_eq!(s, "https://xcp1/export_raw_vdi");
        assert!(!s.contains("s3cret") && !s.contains("OpaqueRef"));
    }

    #[test]
    fn credentials_leave_the_url() {
        let e = Endpoint::new(
            "https://ro%40t:p%61ss@xcp1/import_raw_vdi?vdi=1",
            &HttpOptions::default(),
            None,
        )
        .expect("endpoint");
        assert_eq!(e.auth, Some(("ro@t".into(), Some("pass".into()))));
        assert_eq!(e.url.username(), "");
        assert_eq!(e.shown(), "https://xcp1/import_raw_vdi");
        assert!(matches!(
            Endpoint::new("https://a%zz@x/", &HttpOptions::default(), None),
            Err(Error::Refused(_))
        ));
    }
}
