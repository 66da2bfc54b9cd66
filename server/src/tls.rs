//! The server's certificate: the admin's (`--tls-cert`, `--tls-key`, PEM), or one cairn makes
//! once and keeps in `STORE/tls/` (self-signed, for `localhost`, `127.0.0.1`, `::1` and the
//! host's name). Clients check it against a CA file or pin its SHA-256 fingerprint, which the
//! server prints at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// A certificate chain and key, loaded.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// Where the leaf came from.
    pub cert_path: PathBuf,
    /// Whether cairn made it.
    pub self_signed: bool,
}

impl Identity {
    /// SHA-256 of the leaf certificate, as `AA:BB:...` (what `--fingerprint` takes).
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.certs
            .first()
            .map_or_else(String::new, |c| fingerprint(c.as_ref()))
    }
}

/// SHA-256 of a DER certificate, as colon-separated upper-case hex.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, &format!("reading the {what}"), e))
}

/// Loads the admin's certificate chain and key.
///
/// # Errors
/// Files that cannot be read or hold no certificate or key.
pub fn load(cert: &Path, key: &Path) -> Result<Identity> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(cert, "certificate")?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("{}: not a PEM certificate: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "{}: holds no certificate",
            cert.display()
        )));
    }
    let key_pem = read_pem(key, "key")?;
    let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Usage(format!("{}: not a PEM private key: {e}", key.display())))?;
    Ok(Identity {
        certs,
        key: key_der,
        cert_path: cert.to_path_buf(),
        self_signed: false,
    })
}

/// The store's own certificate, made on first use.
///
/// # Errors
/// I/O errors; a certificate that cannot be made.
pub fn own(store: &Path) -> Result<Identity> {
    let dir = store.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim();
            if !h.is_empty() && h != "localhost" {
                names.push(h.to_owned());
            }
        }
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Usage(format!("making a certificate: {e}")))?;
        // The key first: a certificate without its key would be kept and fail every start.
        cairn_store::write_atomic(&key, made.signing_key.serialize_pem().as_bytes())?;
        cairn_store::write_atomic(&cert, made.cert.pem().as_bytes())?;
    }
    let mut id = load(&cert, &key)?;
    id.self_signed = true;
    Ok(id)
}

/// The rustls configuration of a server presenting `id`.
///
/// # Errors
/// A key that does not fit the certificate, or of a kind rustls does not take.
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| Error::Usage(format!("{}: {e}", id.cert_path.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
