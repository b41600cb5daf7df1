//! Schema migrations, tracked in `apitrail_schema`, applied under an advisory lock so that
//! servers starting together against one database migrate it once.

use apitrail_store::StoreError;
use tokio_postgres::Client;

use crate::{backend, corrupt};

/// Migrations in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_init.sql")];

/// An arbitrary constant naming apitrail's migration lock.
const LOCK_KEY: i64 = 0x6170_6974_7261_696c; // "apitrail"

/// Brings the database to the newest schema, each migration in its own transaction.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS apitrail_schema (version integer NOT NULL); \
             INSERT INTO apitrail_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM apitrail_schema)",
        )
        .await
        .or_else(|e| {
            // Two servers creating the table at once: the loser's CREATE fails on the catalog's
            // unique index; the table exists either way and the lock below orders the rest.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(backend)?;
    let current: i32 = tx
        .query_one("SELECT version FROM apitrail_schema", &[])
        .await
        .map_err(backend)?
        .get(0);
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(corrupt(format!(
            "the database has schema version {current}, newer than this apitrail supports ({}); upgrade apitrail",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await.map_err(backend)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE apitrail_schema SET version = $1", &[&version])
            .await
            .map_err(backend)?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(backend)
}
