//! The request timeline's lookups by request id (audit entries and action records). Each
//! spelling of the id ([`request_id_variants`]) is read in order from its `(org, request_id,
//! created_at, id)` index (migration 0008) up to the limit, and the two runs are merged: at
//! most twice the limit plus two rows are read however many records share the id.

use apitrail_model::query::request_id_variants;
use apitrail_store::{Page, StoreError};
use rusqlite::{Connection, Row, params};

use crate::backend;
use crate::reader::Sql;

/// The tables looked up by request id, with the columns their decoders read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `audit_entries`, read as `audit::ENTRY_COLUMNS`.
    Audit,
    /// `action_records r`, read as `actions::RECORD_COLUMNS`.
    Actions,
}

impl Kind {
    fn table_and_columns(self) -> (&'static str, &'static str) {
        match self {
            Kind::Audit => ("audit_entries r", crate::audit::ENTRY_COLUMNS),
            Kind::Actions => ("action_records r", crate::actions::RECORD_COLUMNS),
        }
    }

    /// The statement: `?1` org, `?2` and `?3` the two spellings, `?4` the limit plus one.
    fn sql(self) -> String {
        let (table, columns) = self.table_and_columns();
        let run = |p: u8| {
            format!(
                "SELECT * FROM (SELECT {columns} FROM {table} WHERE org = ?1 AND request_id = ?{p} \
                 ORDER BY created_at, id LIMIT ?4)"
            )
        };
        format!(
            "{} UNION ALL {} ORDER BY created_at, id LIMIT ?4",
            run(2),
            run(3)
        )
    }
}

/// The org's records of `kind` made by `request_id`, oldest first, at most `limit`.
pub(crate) fn by_request<T>(
    conn: &Connection,
    kind: Kind,
    org: i64,
    request_id: &str,
    limit: u32,
    decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Page<T>, StoreError> {
    let [a, b] = request_id_variants(request_id);
    let items = conn.all(
        &kind.sql(),
        params![org, a, b, i64::from(limit) + 1],
        decode,
    )?;
    Ok(Page::from_lookahead(items, limit))
}

/// SQLite's plan for the statement [`by_request`] runs (for tests of index use).
pub(crate) fn explain(
    conn: &Connection,
    kind: Kind,
    org: i64,
    request_id: &str,
) -> Result<Vec<String>, StoreError> {
    let [a, b] = request_id_variants(request_id);
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", kind.sql()))
        .map_err(backend)?;
    st.query_map(params![org, a, b, 1_001_i64], |r| r.get::<_, String>(3))
        .and_then(Iterator::collect)
        .map_err(backend)
}
