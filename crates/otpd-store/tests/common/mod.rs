//! Helpers shared by the store's test binaries.

/// A plain connection to a test database, for what the store does not offer (reading rows
/// past it, changing settings).
pub async fn connect_raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}
