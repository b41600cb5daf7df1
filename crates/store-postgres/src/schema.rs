//! Schema migrations, tracked in `apitrail_schema`, applied under an advisory lock so that
//! servers starting together against one database migrate it exactly once.

use apitrail_store::StoreError;
use tokio_postgres::Client;

use crate::reader::Sql;
use crate::rows::corrupt;
use crate::{backend, commit};

/// Migrations in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_status_created.sql"),
    include_str!("../migrations/0003_partitions.sql"),
    include_str!("../migrations/0004_actions.sql"),
    include_str!("../migrations/0005_request_log_values.sql"),
    include_str!("../migrations/0006_error_durations.sql"),
    include_str!("../migrations/0007_bounded_partitions.sql"),
    include_str!("../migrations/0008_destination_private.sql"),
    include_str!("../migrations/0009_tail_positions.sql"),
    include_str!("../migrations/0010_request_id_indexes.sql"),
    include_str!("../migrations/0011_request_log_rollups.sql"),
    include_str!("../migrations/0012_viewer_tokens.sql"),
];

/// The version after which the stats rollups are filled from the logs already stored.
const ROLLUPS_VERSION: usize = 11;

/// An arbitrary constant naming apitrail's migration lock ("apitrail" in ASCII).
const LOCK_KEY: i64 = 0x6170_6974_7261_696c;

/// Brings the database to the newest schema, each migration in its own transaction. Holds a
/// session-level advisory lock throughout, so that even the bookkeeping table is created by
/// one server only.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .exec("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = migrate_locked(client).await;
    let unlocked = client
        .exec("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result.and(unlocked.map(drop))
}

async fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch(
            "CREATE TABLE IF NOT EXISTS apitrail_schema (version integer NOT NULL); \
             INSERT INTO apitrail_schema (version) \
             SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM apitrail_schema)",
        )
        .await?;
    let current: i32 = client
        .row("SELECT version FROM apitrail_schema", &[])
        .await?
        .get(0);
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(corrupt(format!(
            "the database has schema version {current}, newer than this apitrail supports ({}); upgrade apitrail",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = client.transaction().await.map_err(backend)?;
        tx.batch(sql).await?;
        if i + 1 == ROLLUPS_VERSION {
            crate::rollups::backfill(&tx).await?;
        }
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.exec("UPDATE apitrail_schema SET version = $1", &[&version])
            .await?;
        commit(tx).await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    Ok(())
}
