//! Wire pieces shared by the native routes (and documented in the OpenAPI).

use serde::Serialize;
use utoipa::ToSchema;

/// Cursor pagination of native lists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The native error envelope (documentation only; see `error::Native`).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct NativeErrorBody {
    error: NativeErrorDetail,
    /// The request id, also in the `X-Request-Id` header.
    request_id: String,
}

/// The error object of the native envelope.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct NativeErrorDetail {
    /// Machine-readable code, e.g. `invalid_parameter`, `unauthorized`.
    code: String,
    /// Human-readable explanation.
    message: String,
    /// The parameter or field at fault, when one is.
    param: Option<String>,
    /// Per-record problems of an ingest call (`index`, `field`, `message`), or per-field
    /// problems of a JSON body.
    details: Option<Vec<NativeErrorItem>>,
}

/// One problem of a batch or body.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct NativeErrorItem {
    /// The record's index in the batch (ingest only).
    index: Option<usize>,
    /// The field at fault; null when the whole record is.
    field: Option<String>,
    /// What is wrong.
    message: String,
}
