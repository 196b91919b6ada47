//! Throw-away databases for tests and the benchmark: each gets a database of its own, created
//! from a server URL and dropped again afterwards.

use otpd_core::ports::StoreError;

use super::tls;

/// The server tests and the benchmark use unless `OTPD_TEST_POSTGRES_URL` names another.
/// `scripts/ensure-postgres` creates this role.
pub const DEFAULT_TEST_SERVER: &str = "postgres://otpd:otpd@127.0.0.1:5432/postgres";

/// A database created for one test and dropped (with `FORCE`) when this value is dropped.
pub struct ScratchDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// The server URL tests use: `OTPD_TEST_POSTGRES_URL`, or the local default.
    pub fn server_url() -> String {
        std::env::var("OTPD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_SERVER.to_owned())
    }

    /// Creates an empty database named `otpd_<prefix>_<random>` on the server at `server_url`.
    pub async fn create(server_url: &str, prefix: &str) -> Result<Self, StoreError> {
        let mut suffix = [0u8; 6];
        otpd_core::crypto::fill_random(&mut suffix);
        let name = format!("otpd_{prefix}_{}", hex::encode(suffix));
        execute_on(server_url, &format!("CREATE DATABASE {name}")).await?;
        let url = with_database(server_url, &name)?;
        Ok(Self {
            server_url: server_url.to_owned(),
            name,
            url,
        })
    }

    /// The URL of the scratch database itself.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop may run inside a runtime, where blocking on another is not allowed: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            runtime.block_on(execute_on(
                &server_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the scratch database {}", self.name);
        }
    }
}

/// The same server URL pointing at another database.
fn with_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    let mut url = url::Url::parse(server_url)
        .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Runs `sql` on the server, over TLS when its URL asks for it, as the store would connect.
async fn execute_on(server_url: &str, sql: &str) -> Result<(), StoreError> {
    let unavailable = |cause: String| {
        StoreError::Unavailable(format!("PostgreSQL at {}: {cause}", redact(server_url)))
    };
    let (config, connector) =
        tls::connection(server_url).map_err(|e| unavailable(e.to_string()))?;
    let (client, connection) = config
        .connect(connector)
        .await
        .map_err(|e| unavailable(super::describe(&e)))?;
    let driver = tokio::spawn(connection);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| unavailable(super::describe(&e)));
    drop(client);
    let _ = driver.await;
    result
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
