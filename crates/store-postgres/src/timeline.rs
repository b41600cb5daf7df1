//! The request timeline's lookups by request id (audit entries and action records). Each
//! spelling of the id ([`request_id_variants`]) is read in order from its `(org, request_id,
//! created_at, id)` index (migration 0010) up to the limit, and the two runs are merged: at
//! most twice the limit plus two rows are read however many records share the id.

use apitrail_model::query::request_id_variants;
use apitrail_store::{Page, StoreError};
use tokio_postgres::Row;

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
    /// The statement: `$1` org, `$2` and `$3` the two spellings, `$4` the limit plus one.
    fn sql(self) -> String {
        let (table, columns) = match self {
            Kind::Audit => ("audit_entries r", crate::audit::ENTRY_COLUMNS),
            Kind::Actions => ("action_records r", crate::actions::RECORD_COLUMNS),
        };
        let run = |p: u8| {
            format!(
                "(SELECT {columns} FROM {table} WHERE r.org = $1 AND r.request_id = ${p} \
                 ORDER BY r.created_at, r.id LIMIT $4)"
            )
        };
        format!(
            "{} UNION ALL {} ORDER BY created_at, id LIMIT $4",
            run(2),
            run(3)
        )
    }
}

/// The org's records of `kind` made by `request_id`, oldest first, at most `limit`.
pub(crate) async fn by_request<T: Send>(
    c: &impl Sql,
    kind: Kind,
    org: i64,
    request_id: &str,
    limit: u32,
    decode: impl Fn(&Row) -> Result<T, StoreError> + Send,
) -> Result<Page<T>, StoreError> {
    let [a, b] = request_id_variants(request_id);
    let n = i64::from(limit) + 1;
    let items = c.all(&kind.sql(), &[&org, &a, &b, &n], decode).await?;
    Ok(Page::from_lookahead(items, limit))
}

/// PostgreSQL's plan for the statement [`by_request`] runs (`EXPLAIN`, without costs).
pub(crate) async fn explain(
    c: &impl Sql,
    kind: Kind,
    org: i64,
    request_id: &str,
) -> Result<String, StoreError> {
    let [a, b] = request_id_variants(request_id);
    let rows = c
        .rows(
            &format!("EXPLAIN (COSTS OFF) {}", kind.sql()),
            &[&org, &a, &b, &1_001_i64],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}
