//! Decoding stored values into the model's. Each table's row decoder stands next to its
//! column list (they agree column by column); the values they share are decoded here, by the
//! rule of `apitrail_store::stored`: what the model refuses is corrupt.

use apitrail_model::action::parse_tags;
use apitrail_model::{ActionStatus, OrgId, Tags, Timestamp};
use rusqlite::Row;
use rusqlite::types::Type;
use uuid::Uuid;

/// A stored value the model refuses: the file was damaged or written by something else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Corrupt(pub String);

/// The error for the value of column `idx` (of SQLite type `ty`) that the model refuses.
pub(crate) fn corrupt(
    idx: usize,
    ty: Type,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, Box::new(cause))
}

/// The error for the text of column `idx` that the model refuses, described by `what`.
pub(crate) fn bad_text(idx: usize, what: String) -> rusqlite::Error {
    corrupt(idx, Type::Text, Corrupt(what))
}

/// A stored timestamp (Unix ms).
pub(crate) fn ts(ms: i64) -> rusqlite::Result<Timestamp> {
    Timestamp::from_millis(ms).ok_or_else(|| {
        corrupt(
            0,
            Type::Integer,
            Corrupt(format!("timestamp {ms} out of range")),
        )
    })
}

/// The timestamp of column `idx`, which may be missing.
pub(crate) fn opt_ts(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    row.get::<_, Option<i64>>(idx)?.map(ts).transpose()
}

/// The id of column `idx` (16 bytes).
pub(crate) fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let bytes: [u8; 16] = row.get(idx)?;
    Ok(Uuid::from_bytes(bytes))
}

/// The id of column `idx`, which may be missing.
pub(crate) fn opt_uuid(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    Ok(row.get::<_, Option<[u8; 16]>>(idx)?.map(Uuid::from_bytes))
}

/// The org id of column `idx`.
pub(crate) fn org_id_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<OrgId> {
    let s: String = row.get(idx)?;
    OrgId::parse(&s).map_err(|e| corrupt(idx, Type::Text, e))
}

/// The tags (or headers) of column `idx`, a JSON object of strings.
pub(crate) fn tags_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Tags> {
    let text: String = row.get(idx)?;
    parse_tags(&text).ok_or_else(|| bad_text(idx, format!("tags {text:?}")))
}

/// The action status of column `idx`.
pub(crate) fn status_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<ActionStatus> {
    let text: String = row.get(idx)?;
    ActionStatus::parse(&text).ok_or_else(|| bad_text(idx, format!("status {text:?}")))
}
