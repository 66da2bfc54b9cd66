//! TLS for NBD (`NBD_OPT_STARTTLS`), with rustls: the configurations a client and a server
//! use, and the stream that wraps a socket once upgraded.
//!
//! A client checks the server's certificate against the CA given (XAPI's
//! `VDI.get_nbd_info` hands out the host's certificate: give that) or the system's roots, and
//! the name it connected to (`localhost` over a unix socket). There is no switch to skip the
//! check. A server offers TLS only (the NBD spec's FORCEDTLS mode): every option before
//! `NBD_OPT_STARTTLS` but `NBD_OPT_ABORT` is answered `NBD_REP_ERR_TLS_REQD`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use rustls::{ClientConfig, ServerConfig};

use crate::client::Stream;
use crate::error::{Error, Result};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str) -> impl FnOnce(rustls::Error) -> Error + '_ {
    move |e| Error::Usage(format!("{what}: {e}"))
}

/// A client configuration trusting the certificates of `ca_pem` (PEM), or the system's roots.
///
/// # Errors
/// A PEM without certificates, or none of the system's roots readable.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| Error::Usage(format!("the CA file: {e}")))?;
                roots
                    .add(c)
                    .map_err(tls_error("a certificate of the CA file"))?;
            }
            if roots.is_empty() {
                return Err(Error::Usage("the CA file holds no certificate".into()));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(Error::Usage(
                    "no CA certificate found on this system: give one with --ca-file".into(),
                ));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS setup"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The roots of a CA file (PEM).
fn roots_of(pem: &[u8], what: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| Error::Usage(format!("{what}: {e}")))?;
        roots
            .add(c)
            .map_err(|e| Error::Usage(format!("a certificate of {what}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Usage(format!("{what} holds no certificate")));
    }
    Ok(roots)
}

/// A server configuration presenting the certificate chain of `cert_pem` with the private key
/// of `key_pem`. With `client_ca_pem`, every client must present a certificate that CA signed
/// (what qemu's `tls-creds-x509` with `verify-peer` and libnbd's `tls-certificates` send): the
/// handshake of a client without one fails, before any option is read.
///
/// # Errors
/// Files that hold no certificate or no key, or a key that does not match.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("the certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Usage(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Usage(format!("the key file: {e}")))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS setup"))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let roots = Arc::new(roots_of(pem, "the client CA file")?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| Error::Usage(format!("the client CA file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(tls_error("the certificate and key"))?;
    Ok(Arc::new(config))
}

/// A stream upgraded to TLS.
pub struct TlsStream<C> {
    inner: rustls::StreamOwned<C, Box<dyn Stream>>,
}

impl<C, S> Read for TlsStream<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<C, S> Write for TlsStream<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<C, S> Stream for TlsStream<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>> + Send,
    S: rustls::SideData,
{
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.inner.sock.set_timeout(timeout)
    }
}

/// Completes a handshake now, so that a certificate that does not check is an error here.
fn handshake<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    sock: &mut Box<dyn Stream>,
) -> Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(sock).map_err(|e| Error::Io {
            what: "the TLS handshake".into(),
            source: e,
        })?;
    }
    Ok(())
}

/// Upgrades a client's socket to TLS with the server `name` (a host name or an address).
///
/// # Errors
/// A name TLS cannot check, a failed handshake (a certificate that does not check).
pub fn connect(
    config: Arc<rustls::ClientConfig>,
    name: &str,
    mut sock: Box<dyn Stream>,
) -> Result<Box<dyn Stream>> {
    let server = ServerName::try_from(name.to_owned())
        .map_err(|e| Error::Usage(format!("{name:?} is not a name TLS can check: {e}")))?;
    let mut conn =
        rustls::ClientConnection::new(config, server).map_err(tls_error("starting TLS"))?;
    handshake(&mut conn, &mut sock)?;
    Ok(Box::new(TlsStream {
        inner: rustls::StreamOwned::new(conn, sock),
    }))
}

/// Upgrades a server's socket to TLS.
///
/// # Errors
/// A failed handshake.
pub fn accept(
    config: Arc<rustls::ServerConfig>,
    mut sock: Box<dyn Stream>,
) -> Result<Box<dyn Stream>> {
    let mut conn = rustls::ServerConnection::new(config).map_err(tls_error("starting TLS"))?;
    handshake(&mut conn, &mut sock)?;
    Ok(Box::new(TlsStream {
        inner: rustls::StreamOwned::new(conn, sock),
    }))
}
