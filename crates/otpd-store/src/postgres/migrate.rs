//! Embedded schema migrations for PostgreSQL. A dozen lines of our own rather than a migration
//! crate: several nodes may start at once, so the whole run holds an advisory lock, and a node
//! older than the schema must refuse to start rather than write to tables it does not know.

use otpd_core::ports::StoreError;

/// Every migration, in order; the number is the schema version it brings the database to.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_failed_checks_by_client_ip.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_one_statement_check.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_failed_messages.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_grouped_sends_and_checks.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_sealed_text_only_while_pending.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_checks_update_in_place.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_check_in_fewer_statements.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_checks_without_foreign_key.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_messages_without_foreign_key.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_previous_secret.sql"),
    ),
    (
        12,
        include_str!("../../migrations/postgres/0012_account_limits.sql"),
    ),
    (
        13,
        include_str!("../../migrations/postgres/0013_rolling_hour.sql"),
    ),
    (
        14,
        include_str!("../../migrations/postgres/0014_checks_as_one_update.sql"),
    ),
    (
        15,
        include_str!("../../migrations/postgres/0015_sends_as_one_statement.sql"),
    ),
    (
        16,
        include_str!("../../migrations/postgres/0016_limited_sends_as_one_statement.sql"),
    ),
];

/// An arbitrary constant naming otpd's migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x006f_7470_646d_6967;

pub(super) async fn run(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let failed = |e: tokio_postgres::Error| {
        StoreError::Unavailable(format!(
            "migrating the database failed: {}",
            super::describe(&e)
        ))
    };
    let transaction = client.transaction().await.map_err(failed)?;
    // The session's timeouts guard requests; a migration (an index on a big table, say) and the
    // wait for another node's migration may take longer.
    transaction
        .batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await
        .map_err(failed)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS otpd_schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(failed)?;
    let current: i32 = transaction
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM otpd_schema_migrations",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(StoreError::Unavailable(format!(
            "the database schema is at version {current}, newer than this otpd knows ({latest}): \
             upgrade otpd"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction.batch_execute(sql).await.map_err(failed)?;
        transaction
            .execute(
                "INSERT INTO otpd_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(failed)?;
        tracing::info!(version, "database schema migrated");
    }
    transaction.commit().await.map_err(failed)
}
