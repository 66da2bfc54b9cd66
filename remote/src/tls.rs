//! How a client checks the server's certificate: against a CA file (`--ca-file`), pinned by
//! its SHA-256 fingerprint (`--fingerprint`, what `cairn serve` prints at start), or against
//! the system's roots. A pinned certificate is checked by fingerprint instead of by name (the
//! certificate is known exactly); its handshake signatures are still verified.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use cairn_store::{Error, Result};

/// Certificate checks.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to check the server's chain against.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint the server's certificate must have (hex, colons optional).
    pub fingerprint: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `opts`.
///
/// # Errors
/// A CA file that cannot be read or holds no certificate; a fingerprint that is not 32 bytes
/// of hex.
pub fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?;
    if let Some(fp) = &opts.fingerprint {
        let want = parse_fingerprint(fp)?;
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                want,
                provider: provider(),
            }))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                what: "reading the CA file".into(),
                source,
            })?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn parse_fingerprint(fp: &str) -> Result<[u8; 32]> {
    let hex: String = fp.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "--fingerprint {fp:?}: expected a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| Error::Usage(format!("--fingerprint {fp:?}: not hex")))?;
    }
    Ok(out)
}

#[derive(Debug)]
struct Pinned {
    want: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            let shown: Vec<String> = got.as_ref().iter().map(|b| format!("{b:02X}")).collect();
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the one pinned by --fingerprint",
                shown.join(":")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
