//! Wire pieces shared by the native routes (and documented in the OpenAPI).

use serde::Serialize;
use utoipa::ToSchema;

/// Cursor pagination of native lists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
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
    /// Machine-readable code: `unauthorized`, `forbidden`, `not_found`, `route_not_found`,
    /// `method_not_allowed`, `invalid_parameter`, `invalid_request`, `invalid_records`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `overloaded`,
    /// `unavailable` or `internal_error`.
    code: String,
    /// Human-readable explanation.
    message: String,
    /// The parameter or field at fault; absent when none is.
    #[schema(nullable = false)]
    param: Option<String>,
    /// Per-record problems of an ingest call (`index`, `field`, `message`), or per-field
    /// problems of a JSON body (`field`, `message`); absent otherwise.
    #[schema(nullable = false)]
    details: Option<Vec<NativeErrorItem>>,
}

/// One problem of a batch or body.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct NativeErrorItem {
    /// The record's index in the batch (ingest only; absent for a body's fields).
    #[schema(nullable = false, minimum = 0)]
    index: Option<usize>,
    /// The field at fault; null when the whole record is.
    #[schema(required = true)]
    field: Option<String>,
    /// What is wrong.
    message: String,
}
