//! TLS for the connections Gantry makes: to Redis (`rediss://`, see
//! [`redis`]) and to PostgreSQL (`sslmode=...`, see [`postgres`]). One TLS
//! stack serves both: rustls with the ring crypto provider, installed as the
//! process-wide default once, so no connection depends on which provider
//! some dependency happens to enable. Public roots are Mozilla's, compiled in
//! (webpki-roots), so verifying a managed service's certificate does not
//! depend on the image's CA store; a PEM bundle given in config replaces them.

pub mod postgres;
pub mod redis;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// A TLS setting that cannot be used. Each names the config key (or URL
/// parameter) and the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or holds no usable PEM.
    #[error("{what} '{path}': {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error("{0} must be set together")]
    Pair(&'static str),
    /// Certificates were given for a connection that does not use TLS.
    #[error("{0}")]
    NotTls(String),
    /// rustls refused the configuration (a client key that does not match
    /// its certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// `error` and its causes, `: `-separated, each once. tokio-postgres keeps
/// the reason of a failure (a refused certificate, the server's message) in
/// the source, not in its own message.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let part = next.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = next.source();
    }
    text
}

/// The crypto provider every TLS connection uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (the Redis client
/// builds its TLS configuration with the default one). Idempotent; a
/// provider installed earlier by the embedding program is kept.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The certificates of the PEM file at `path` (at least one).
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// The private key of the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: format!("holds no PEM private key: {e}"),
    })
}

/// The trust anchors in the PEM bundle at `path`.
pub fn read_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(what, path)? {
        roots.add(certificate).map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Mozilla's root certificates, as public managed services need.
pub fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}
