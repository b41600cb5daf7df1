//! Schema migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

/// One schema version: a script, and code run after it in the same transaction (for what SQL
/// alone cannot do).
struct Migration {
    sql: &'static str,
    then: Option<PostStep>,
}

/// Code that finishes a migration.
type PostStep = fn(&Connection) -> Result<(), MigrateError>;

impl Migration {
    /// A migration that is its script alone.
    const fn plain(sql: &'static str) -> Self {
        Self { sql, then: None }
    }
}

/// Migrations in order; the schema version is the number applied.
const MIGRATIONS: &[Migration] = &[
    Migration::plain(include_str!("../migrations/0001_init.sql")),
    Migration::plain(include_str!("../migrations/0002_principal_indexes.sql")),
    Migration {
        sql: include_str!("../migrations/0003_audit_chain.sql"),
        then: Some(crate::audit::link_unchained),
    },
    Migration::plain(include_str!("../migrations/0004_actions.sql")),
    Migration::plain(include_str!("../migrations/0005_request_log_values.sql")),
    Migration::plain(include_str!("../migrations/0006_destination_private.sql")),
    Migration::plain(include_str!("../migrations/0007_tail_positions.sql")),
    Migration::plain(include_str!("../migrations/0008_request_id_indexes.sql")),
    Migration {
        sql: include_str!("../migrations/0009_request_log_rollups.sql"),
        then: Some(crate::rollups::backfill),
    },
    Migration::plain(include_str!("../migrations/0010_viewer_tokens.sql")),
];

/// Errors while migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// SQLite refused a statement.
    #[error("migration failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A migration's code failed.
    #[error("migration failed: {0}")]
    Backfill(String),
    /// The file was written by a newer apitrail.
    #[error(
        "the database has schema version {found}, newer than this apitrail supports ({supported}); upgrade apitrail"
    )]
    TooNew {
        /// Version in the file.
        found: usize,
        /// Newest version known here.
        supported: usize,
    },
}

/// Brings the database to the newest schema, each migration in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(MigrateError::TooNew {
            found: current,
            supported: MIGRATIONS.len(),
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(m.sql)?;
        if let Some(then) = m.then {
            then(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied SQLite migration");
    }
    Ok(())
}
