//! Decoding stored values into the model's. Each table's row decoder stands next to its
//! column list (they agree column by column); the values they share are decoded here, by the
//! rule of `apitrail_store::stored`: what the model refuses is corrupt.

use apitrail_model::action::parse_tags;
use apitrail_model::{ActionStatus, OrgId, Tags, Timestamp};
use apitrail_store::StoreError;

/// A stored value the model refuses: the database was altered by something else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Corrupt(pub String);

/// The error for a stored value the model refuses, described by `msg`.
pub(crate) fn corrupt(msg: String) -> StoreError {
    StoreError::backend(Corrupt(msg))
}

/// A stored timestamp (Unix ms).
pub(crate) fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millis(ms).ok_or_else(|| corrupt(format!("timestamp {ms} out of range")))
}

/// A stored timestamp that may be missing.
pub(crate) fn opt_ts(v: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    v.map(ts).transpose()
}

/// A stored count (a version, an attempt, seconds), a bigint.
pub(crate) fn u32_col(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("count {v}")))
}

/// Stored tags (or headers), a JSON object of strings.
pub(crate) fn tags(text: &str) -> Result<Tags, StoreError> {
    parse_tags(text).ok_or_else(|| corrupt(format!("tags {text:?}")))
}

/// A stored action status.
pub(crate) fn status(text: &str) -> Result<ActionStatus, StoreError> {
    ActionStatus::parse(text).ok_or_else(|| corrupt(format!("status {text:?}")))
}

/// A stored org id.
pub(crate) fn org_id(s: &str) -> Result<OrgId, StoreError> {
    OrgId::parse(s).map_err(|e| corrupt(format!("stored org id {s:?}: {e}")))
}
