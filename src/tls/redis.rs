//! The Redis client, with TLS for `rediss://` URLs. Without files the
//! server's certificate must chain to a public root (webpki-roots) and match
//! the URL's host; `cache.redis_ca_file` replaces the public roots with the
//! given PEM bundle (a private CA, a self-signed server), and
//! `cache.redis_cert_file` with `cache.redis_key_file` present a client
//! certificate (servers that require one: `tls-auth-clients yes`). The
//! redis crate's `#insecure` fragment (`rediss://host:6380/#insecure`) turns
//! every certificate check off: encrypted, not authenticated.

use std::path::PathBuf;

use redis::{ClientTlsConfig, ConnectionAddr, TlsCertificates};

use super::{read_certificates, read_private_key, read_roots, TlsError};

/// The certificate files of the Redis connection; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// PEM bundle of the CAs to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisTlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// A client for `url` (`redis://` or `rediss://`) with `files` applied.
/// Files are read and checked now, so a bad one fails at start, naming its
/// key; nothing connects yet.
pub fn client(url: &str, files: &RedisTlsFiles) -> Result<redis::Client, TlsError> {
    super::install_default_provider();
    let invalid = |e: redis::RedisError| TlsError::Config(format!("cache.redis_url: {e}"));
    let plain = redis::Client::open(url).map_err(invalid)?;
    let insecure =
        match plain.get_connection_info().addr() {
            ConnectionAddr::TcpTls { insecure, .. } => *insecure,
            _ if files.is_empty() => return Ok(plain),
            _ => return Err(TlsError::NotTls(
                "cache.redis_ca_file, redis_cert_file and redis_key_file need a rediss:// URL in \
                 cache.redis_url"
                    .into(),
            )),
        };
    if insecure {
        tracing::warn!(
            "cache.redis_url ends in #insecure: the Redis server's certificate is not verified"
        );
    }
    if files.is_empty() {
        return Ok(plain);
    }
    let root_cert = match &files.ca_file {
        Some(path) => {
            // Parsed here for the error message; the client parses it again.
            read_roots("cache.redis_ca_file", path)?;
            Some(read(path, "cache.redis_ca_file")?)
        }
        None => None,
    };
    let client_tls = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            read_certificates("cache.redis_cert_file", cert)?;
            read_private_key("cache.redis_key_file", key)?;
            Some(ClientTlsConfig {
                client_cert: read(cert, "cache.redis_cert_file")?,
                client_key: read(key, "cache.redis_key_file")?,
            })
        }
        (None, None) => None,
        _ => {
            return Err(TlsError::Pair(
                "cache.redis_cert_file and cache.redis_key_file",
            ))
        }
    };
    redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(invalid)
}

fn read(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
