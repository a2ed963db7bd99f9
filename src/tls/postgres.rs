//! PostgreSQL connection settings with TLS, as libpq reads them. The URL
//! (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem`) or its
//! key=value form may carry `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`; tokio-postgres knows only `disable|prefer|require`, so these
//! four are taken out here and turned into a rustls connector:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | no |
//! | `prefer` (default) | when the server offers TLS, else plaintext | chain only, and only when a root certificate is given |
//! | `require` | always (refused if the server has no TLS) | chain only, and only when a root certificate is given |
//! | `verify-ca` | always | chain, against the root certificate or the public roots |
//! | `verify-full` | always | chain and host name (the URL's host, not `hostaddr`) |
//!
//! The root certificate is `sslrootcert=` (a PEM file, or `system` for the
//! public roots), else `store.ca_file`; without either, `verify-*` trust
//! Mozilla's public roots (libpq would fail instead).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::verify::{ChainOnly, Unverified};
use super::{provider, public_roots, read_certificates, read_private_key, read_roots, TlsError};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it
    /// must succeed. Certificate checks live in the connector.
    fn wire(self) -> WireSslMode {
        match self {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        }
    }
}

/// Why a database URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// The URL does not parse (the message never repeats the URL, which may
    /// hold a password).
    #[error("{0}")]
    Url(String),
    /// A certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where and how to connect: the tokio-postgres settings and the TLS
/// connector that applies the `sslmode`.
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The TLS parameters taken out of a URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsParams {
    /// Takes `key=value` when it is one of ours; false for any other key.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Parses `database_url`; `ca_file` (`store.ca_file`) is the root
/// certificate when the URL names none.
pub fn target(database_url: &str, ca_file: Option<&Path>) -> Result<PgTarget, PgTlsError> {
    let (rest, params) = split_tls_params(database_url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| PgTlsError::Url(super::with_causes(&e)))?;
    let mode = match &params.mode {
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            PgTlsError::Url(format!(
                "sslmode '{value}' is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        })?,
        None => SslMode::Prefer,
    };
    config.ssl_mode(mode.wire());
    let roots = match params.root_cert.as_deref() {
        Some("system") => Some(public_roots()),
        Some(path) => Some(read_roots("sslrootcert", Path::new(path))?),
        None => ca_file
            .map(|path| read_roots("store.ca_file", path))
            .transpose()?,
    };
    let client = rustls_config(mode, roots, &params)?;
    Ok(PgTarget {
        config,
        mode,
        tls: MakeRustlsConnect::new(client),
    })
}

fn rustls_config(
    mode: SslMode,
    roots: Option<RootCertStore>,
    params: &TlsParams,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))
    };
    let builder = match (mode, roots) {
        (SslMode::VerifyFull, roots) => {
            builder.with_webpki_verifier(verifier(roots.unwrap_or_else(public_roots))?)
        }
        (SslMode::VerifyCa, roots) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly::new(verifier(
                    roots.unwrap_or_else(public_roots),
                )?)))
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, Some(roots)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly::new(verifier(roots)?))),
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified::new(provider.clone()))),
    };
    let mut config = match (&params.cert, &params.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certificates("sslcert", Path::new(cert))?,
                read_private_key("sslkey", Path::new(key))?,
            )
            .map_err(|e| TlsError::Config(format!("sslcert/sslkey: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::Pair("sslcert and sslkey")),
    };
    // PostgreSQL 17 checks the ALPN protocol when a client offers one;
    // older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// Splits the TLS parameters off a URL (`postgres://...?a=b&c=d`) or a
/// key=value string, returning what tokio-postgres should parse.
fn split_tls_params(url: &str) -> Result<(String, TlsParams), PgTlsError> {
    let mut params = TlsParams::default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        let mut kept = Vec::new();
        for (key, value) in key_values(url)? {
            if !params.take(&key, value.clone()) {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        return Ok((kept.join(" "), params));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !params.take(key, percent_decode(value)?) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// libpq's key=value form: `key = value` pairs separated by white space,
/// values optionally in single quotes, `\` escaping the next character.
fn key_values(text: &str) -> Result<Vec<(String, String)>, PgTlsError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(PgTlsError::Url(format!("expected '=' after '{key}'")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => {
                    return Err(PgTlsError::Url(format!(
                        "unterminated quoted value of '{key}'"
                    )))
                }
                None => break,
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(value: &str) -> Result<String, PgTlsError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgTlsError::Url("a bad %-escape in a URL parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgTlsError::Url("a URL parameter is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, params) = split_tls_params(
            "postgres://u:p@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/app?application_name=x"
        );
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.root_cert.as_deref(), Some("/etc/ca.pem"));

        let (rest, params) =
            split_tls_params("host=db port=5432 sslmode = 'verify-ca' password='it\\'s' sslkey=/k")
                .unwrap();
        assert_eq!(rest, "host='db' port='5432' password='it\\'s'");
        assert_eq!(params.mode.as_deref(), Some("verify-ca"));
        assert_eq!(params.key.as_deref(), Some("/k"));
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn modes_parse_and_bad_ones_are_refused() {
        let full = target("postgres://u@h/d?sslmode=verify-full", None).unwrap();
        assert_eq!(full.mode, SslMode::VerifyFull);
        assert_eq!(full.config.get_ssl_mode(), WireSslMode::Require);
        let default = target("postgres://u@h/d", None).unwrap();
        assert_eq!(default.mode, SslMode::Prefer);
        assert_eq!(default.config.get_ssl_mode(), WireSslMode::Prefer);
        let err = target("postgres://u@h/d?sslmode=always", None).unwrap_err();
        assert!(err.to_string().contains("sslmode 'always'"), "{err}");
        let err = target("postgres://u@h/d?sslmode=require&sslcert=/c", None).unwrap_err();
        assert!(err.to_string().contains("sslcert and sslkey"), "{err}");
        let err = target("postgres://u@h/d?sslrootcert=/nonexistent/ca.pem", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("sslrootcert '/nonexistent/ca.pem'"),
            "{err}"
        );
    }
}
