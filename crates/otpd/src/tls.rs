//! HTTPS: the certificate chain and private key otpd serves with, read from PEM files at start
//! and again on SIGHUP, so that a renewed certificate needs no restart.
//!
//! Both APIs carry secrets in every request (the amm API's basic-auth password, and in both the
//! codes themselves), so anything but a loopback or a private link wants TLS: otpd's own, or a
//! proxy's in front of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The acceptor new connections get: the files as last read well.
#[derive(Clone)]
pub struct CurrentAcceptor(watch::Receiver<TlsAcceptor>);

impl CurrentAcceptor {
    pub fn get(&self) -> TlsAcceptor {
        self.0.borrow().clone()
    }
}

/// Reads `cert_file` and `key_file` now, and again at every SIGHUP: a reading that fails is
/// logged and the certificate in force stays. Call it within the runtime.
pub fn reloaded_on_hangup(
    cert_file: PathBuf,
    key_file: PathBuf,
) -> Result<CurrentAcceptor, TlsSetupError> {
    let (current, receiver) = watch::channel(acceptor(&cert_file, &key_file)?);
    crate::hangup::on_hangup(move || match acceptor(&cert_file, &key_file) {
        Ok(renewed) => {
            current.send_replace(renewed);
            tracing::info!(
                cert = %cert_file.display(),
                "read the TLS certificate and key again"
            );
        }
        Err(error) => tracing::error!(
            %error,
            "cannot reload the TLS certificate: new connections still get the one read before"
        ),
    });
    Ok(CurrentAcceptor(receiver))
}

/// Why the certificate and key cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the TLS certificates in {path}: {source}")]
    Certificates { path: PathBuf, source: pem::Error },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("cannot read a TLS private key (PKCS#8, PKCS#1 or SEC1, in PEM) in {path}: {source}")]
    Key { path: PathBuf, source: pem::Error },
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Rejected(#[from] rustls::Error),
}

/// The acceptor for `cert_file` (the server's certificate first, then any intermediates) and
/// `key_file`. Only TLS 1.2 and 1.3, with rustls' default suites, and HTTP/1.1 named in ALPN.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Certificates {
            path: cert_file.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsSetupError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end-to-end tests' certificate and keys (`e2e/tls/README.md`).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../e2e/tls")
            .join(name)
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor() {
        let acceptor = acceptor(&fixture("localhost.crt"), &fixture("localhost.key"));
        assert!(acceptor.is_ok(), "{:?}", acceptor.err());
    }

    /// Why serving with certificate file `cert` and key file `key` is refused.
    fn refusal(cert: &str, key: &str) -> TlsSetupError {
        acceptor(&fixture(cert), &fixture(key))
            .err()
            .expect("the pair is refused")
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let error = refusal("missing.crt", "localhost.key");
        assert!(matches!(error, TlsSetupError::Certificates { .. }));
        assert!(error.to_string().contains("missing.crt"), "{error}");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        // The key file is PEM, but holds no certificate.
        let error = refusal("localhost.key", "localhost.key");
        assert!(
            matches!(error, TlsSetupError::NoCertificate { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_a_key_is_refused() {
        let error = refusal("localhost.crt", "localhost.crt");
        assert!(matches!(error, TlsSetupError::Key { .. }), "{error}");
        assert!(error.to_string().contains("localhost.crt"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let error = refusal("localhost.crt", "other.key");
        assert!(matches!(error, TlsSetupError::Rejected(_)), "{error}");
    }
}
