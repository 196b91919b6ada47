//! TLS to PostgreSQL, asked for in the database URL as libpq users ask for it.
//!
//! tokio-postgres knows libpq's `sslmode` values `disable`, `prefer` and `require`, but not
//! `verify-ca`, `verify-full` or `sslrootcert`, and speaks no TLS by itself. So otpd takes both
//! settings out of a `postgres://` URL itself. Whenever it speaks TLS to the database it
//! verifies the server's certificate and host name. The connection carries account secrets and
//! code digests, and TLS without that check (libpq's `require`) gives way to anyone who can
//! sit in the middle.
//!
//! `prefer`, libpq's default, would mean that unchecked TLS, or plain text when the server has
//! no TLS. For it otpd keeps to plain text, as it did before it spoke TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection to the database is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Security {
    /// Plain text: `sslmode` `disable`, `allow` or `prefer`, or none.
    Plain,
    /// TLS, the server's certificate checked against these roots and its name against the host:
    /// `sslmode` `require`, `verify-ca` or `verify-full`.
    Verified(Roots),
}

/// Whom a verified connection trusts to vouch for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The operating system's trusted roots (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// The certificates in a PEM file (`sslrootcert=PATH`), such as a private CA's.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum TlsSettingError {
    #[error("sslmode={0} is not one of disable, allow, prefer, require, verify-ca and verify-full")]
    UnknownMode(String),
    #[error(
        "sslrootcert needs sslmode=verify-full (or require or verify-ca): with any other sslmode otpd speaks plain text to the database"
    )]
    RootsWithoutTls,
    #[error("{0}")]
    Url(String),
    #[error("cannot read PostgreSQL root certificates from {}: {reason}", path.display())]
    Roots { path: PathBuf, reason: String },
    #[error("cannot set up TLS to PostgreSQL: {0}")]
    Tls(#[from] rustls::Error),
}

/// tokio-postgres' settings for a database URL (a `postgres://` URL, or libpq's key=value
/// form), and the connector to connect with. Plain-text connections get a connector too, one
/// that trusts nobody, so that every caller connects one way: with the `sslmode=disable` set
/// on them, tokio-postgres never calls it.
pub(super) fn connection(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), TlsSettingError> {
    let (config, security) = read_url(url)?;
    Ok((config, connector(&security)?))
}

/// Reads a database URL into tokio-postgres' settings and the protection it asks for. The
/// `sslmode` set on the result is the one otpd acts on: `require` when it will speak TLS,
/// `disable` otherwise.
fn read_url(url: &str) -> Result<(tokio_postgres::Config, Security), TlsSettingError> {
    let (rest, asked) = take_tls_parameters(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| TlsSettingError::Url(e.to_string()))?;
    // In the key=value form tokio-postgres read `sslmode` itself (and refuses the values it
    // does not know, and `sslrootcert`).
    let security = asked.unwrap_or(match config.get_ssl_mode() {
        SslMode::Require => Security::Verified(Roots::System),
        _ => Security::Plain,
    });
    config.ssl_mode(match security {
        Security::Plain => SslMode::Disable,
        Security::Verified(_) => SslMode::Require,
    });
    Ok((config, security))
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query string, leaving the
/// other parameters as they were written. `None` for the key=value form, left whole.
fn take_tls_parameters(url: &str) -> Result<(String, Option<Security>), TlsSettingError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), is_url.then_some(Security::Plain)));
    };
    let (mut mode, mut roots) = (None, None);
    let mut kept = Vec::new();
    for parameter in query.split('&') {
        let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        match percent_decode_str(key).decode_utf8_lossy().as_ref() {
            "sslmode" => mode = Some(value()),
            "sslrootcert" => roots = Some(value()),
            _ => kept.push(parameter),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let security = match mode.as_deref().unwrap_or("prefer") {
        "disable" | "allow" | "prefer" if roots.is_some() => {
            return Err(TlsSettingError::RootsWithoutTls);
        }
        "disable" | "allow" | "prefer" => Security::Plain,
        "require" | "verify-ca" | "verify-full" => Security::Verified(match roots.as_deref() {
            None | Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
        }),
        other => return Err(TlsSettingError::UnknownMode(other.to_owned())),
    };
    Ok((rest, Some(security)))
}

/// A TLS connector for `security`, with ring for the cryptography, as for the HTTP SMS
/// transport. For plain text it trusts nobody: it is never called.
fn connector(security: &Security) -> Result<MakeRustlsConnect, TlsSettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let config = match security {
        Security::Plain => builder
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
        Security::Verified(Roots::System) => {
            builder.with_platform_verifier()?.with_no_client_auth()
        }
        Security::Verified(Roots::File(path)) => builder
            .with_root_certificates(read_roots(path)?)
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsSettingError> {
    let unreadable = |reason: String| TlsSettingError::Roots {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(e.to_string()))? {
        let certificate = certificate.map_err(|e| unreadable(e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unreadable("the file holds no PEM certificate".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(url: &str) -> (tokio_postgres::Config, Security) {
        read_url(url).expect("a valid URL")
    }

    #[test]
    fn plain_text_unless_tls_is_required() {
        for url in [
            "postgres://otpd@db/otpd",
            "postgres://otpd@db/otpd?sslmode=disable",
            "postgres://otpd@db/otpd?sslmode=allow",
            "postgresql://otpd@db/otpd?sslmode=prefer",
            "host=db user=otpd",
            "host=db user=otpd sslmode=prefer",
        ] {
            let (config, security) = read(url);
            assert_eq!(security, Security::Plain, "{url}");
            assert_eq!(config.get_ssl_mode(), SslMode::Disable, "{url}");
        }
    }

    #[test]
    fn every_mode_that_asks_for_tls_gets_it_verified() {
        for url in [
            "postgres://otpd@db/otpd?sslmode=require",
            "postgres://otpd@db/otpd?sslmode=verify-ca",
            "postgres://otpd@db/otpd?sslmode=verify-full",
            "postgres://otpd@db/otpd?sslmode=verify-full&sslrootcert=system",
            "host=db user=otpd sslmode=require",
        ] {
            let (config, security) = read(url);
            assert_eq!(security, Security::Verified(Roots::System), "{url}");
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{url}");
        }
    }

    #[test]
    fn a_root_file_is_read_from_the_url_and_the_other_parameters_are_kept() {
        let (config, security) = read(
            "postgres://otpd:p%40ss@db:5433/otpd?options=-c%20search_path%3Dotpd\
             &sslrootcert=%2Fetc%2Fotpd%2Fdb%20ca.pem&application_name=x&sslmode=verify-full",
        );
        assert_eq!(
            security,
            Security::Verified(Roots::File("/etc/otpd/db ca.pem".into()))
        );
        assert_eq!(config.get_options(), Some("-c search_path=otpd"));
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_ports(), [5433]);
    }

    #[test]
    fn unknown_modes_and_roots_without_tls_are_refused() {
        let error = read_url("postgres://db/otpd?sslmode=verify").expect_err("refused");
        assert!(matches!(error, TlsSettingError::UnknownMode(mode) if mode == "verify"));
        for url in [
            "postgres://db/otpd?sslrootcert=/ca.pem",
            "postgres://db/otpd?sslmode=prefer&sslrootcert=/ca.pem",
        ] {
            let error = read_url(url).expect_err("refused");
            assert!(matches!(error, TlsSettingError::RootsWithoutTls), "{url}");
        }
        // tokio-postgres refuses in the key=value form what it cannot do.
        let error = read_url("host=db sslmode=verify-full").expect_err("refused");
        assert!(matches!(error, TlsSettingError::Url(_)));
    }

    #[test]
    fn a_root_file_that_is_missing_or_holds_no_certificate_is_refused() {
        let missing = Security::Verified(Roots::File("/nonexistent/otpd-ca.pem".into()));
        let error = connector(&missing).err().expect("refused");
        assert!(
            error.to_string().contains("/nonexistent/otpd-ca.pem"),
            "{error}"
        );
        let empty = tempfile::NamedTempFile::new().expect("temp file");
        let error = connector(&Security::Verified(Roots::File(empty.path().to_owned())))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
