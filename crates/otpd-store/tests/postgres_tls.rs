//! TLS to PostgreSQL, against the test server's own certificate: Debian's PostgreSQL serves TLS
//! with the machine's self-signed "snakeoil" certificate, which `scripts/ensure-postgres` lets
//! the test role find (`ssl_cert_file`).

use std::path::PathBuf;

use otpd_core::ports::{Store, StoreError};
use otpd_store::{PgStore, PgStoreOptions, ScratchDatabase};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

fn options(url: &str) -> PgStoreOptions {
    PgStoreOptions {
        url: url.to_owned(),
        pool_size: 2,
        clock: None,
    }
}

/// The test server's certificate file and a DNS name it is valid for.
struct ServerCertificate {
    path: PathBuf,
    name: String,
}

async fn server_certificate(url: &str) -> ServerCertificate {
    let client = connect_plain(url).await;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap_or_else(|e| panic!("SHOW {name}: {e} (run scripts/ensure-postgres)"));
            row.get::<_, String>(0)
        }
    };
    assert_eq!(
        setting("ssl").await,
        "on",
        "the test server must serve TLS (Debian's PostgreSQL does, with its snakeoil certificate)"
    );
    let path = PathBuf::from(setting("ssl_cert_file").await);
    let der = CertificateDer::from_pem_file(&path)
        .unwrap_or_else(|e| panic!("the server's certificate {}: {e}", path.display()));
    let certificate = Certificate::from_der(&der).expect("an X.509 certificate");
    let (_, SubjectAltName(names)) = certificate
        .tbs_certificate
        .get::<SubjectAltName>()
        .expect("a readable subjectAltName")
        .expect("the server's certificate names its host");
    let name = names
        .iter()
        .find_map(|name| match name {
            GeneralName::DnsName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .expect("a DNS name in the server's certificate");
    ServerCertificate { path, name }
}

/// A plain connection to the test server.
async fn connect_plain(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running: run scripts/ensure-postgres");
    tokio::spawn(connection);
    client
}

/// `url` addressed by `name` (so that TLS checks the certificate against it) while still
/// connecting to the same address, with `parameters` added.
fn addressed_by(url: &str, name: &str, parameters: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(url).expect("url");
    let address = url.host_str().expect("a host").to_owned();
    url.set_host(Some(name)).expect("a host name");
    url.query_pairs_mut().append_pair("hostaddr", &address);
    for (key, value) in parameters {
        url.query_pairs_mut().append_pair(key, value);
    }
    url.to_string()
}

#[tokio::test]
async fn a_store_speaks_tls_to_a_server_its_root_file_vouches_for() {
    let server = ScratchDatabase::server_url();
    let certificate = server_certificate(&server).await;
    let root_file = certificate.path.to_string_lossy();
    let tls_server = addressed_by(
        &server,
        &certificate.name,
        &[("sslmode", "verify-full"), ("sslrootcert", &root_file)],
    );
    // The scratch database is made over TLS too, as the benchmark makes its own.
    let database = ScratchDatabase::create(&tls_server, "tls")
        .await
        .expect("a database made over TLS");
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("TLS to a server whose certificate is in the root file");
    store.ping().await.expect("ping");
    assert!(store.list_accounts().await.expect("accounts").is_empty());

    // The server says how the store's sessions are protected.
    let url = url::Url::parse(database.url()).expect("url");
    let name = url.path().trim_start_matches('/');
    let sessions: Vec<bool> = connect_plain(&server)
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'otpd' AND a.datname = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!sessions.is_empty(), "the store's sessions are listed");
    assert!(
        sessions.iter().all(|&ssl| ssl),
        "every session is TLS: {sessions:?}"
    );
}

#[tokio::test]
async fn a_store_refuses_a_server_it_cannot_verify() {
    let database = ScratchDatabase::create(&ScratchDatabase::server_url(), "tls")
        .await
        .expect("PostgreSQL must be running: run scripts/ensure-postgres");
    let certificate = server_certificate(database.url()).await;
    let root_file = certificate.path.to_string_lossy();
    let unrelated_root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/unrelated-ca.pem");
    let refused = [
        // A root that signed nothing of the server's (its key was thrown away once it was made).
        addressed_by(
            database.url(),
            &certificate.name,
            &[("sslmode", "require"), ("sslrootcert", unrelated_root)],
        ),
        // The right root, but the server reached by a name its certificate does not hold.
        addressed_by(
            database.url(),
            "not-the-database.invalid",
            &[("sslmode", "verify-full"), ("sslrootcert", &root_file)],
        ),
    ];
    for url in refused {
        let Err(StoreError::Unavailable(message)) = PgStore::connect(options(&url)).await else {
            panic!("{url} must be refused");
        };
        assert!(
            message.contains("certificate"),
            "the certificate is named as the cause: {message}"
        );
    }
}
