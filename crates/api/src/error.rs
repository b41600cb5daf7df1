//! Errors of the HTTP layer: one [`ApiError`] type, one table from its kind to a status and a
//! code, and one renderer per dialect envelope.
//!
//! Handlers return `Failure<D>`, where `D` is the dialect whose envelope the error is written
//! in; the error itself never knows which dialect it ends up in.

use std::marker::PhantomData;

use apitrail_model::FieldError;
use apitrail_store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::context;

/// What went wrong, independent of any dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No credentials, or credentials that match no live key.
    Unauthorized,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// No such resource for this caller (also: another org's resource).
    NotFound,
    /// No such route.
    RouteNotFound,
    /// The route exists, but not with this method.
    MethodNotAllowed,
    /// A query or path parameter is malformed or out of range.
    InvalidParameter,
    /// The request body is malformed.
    InvalidBody,
    /// Some ingested records are invalid; nothing was stored.
    InvalidRecords,
    /// The resource already exists.
    Conflict,
    /// The body or batch is larger than allowed.
    PayloadTooLarge,
    /// The body's media type or content coding is not accepted.
    UnsupportedMediaType,
    /// The request body stalled or took too long to arrive.
    RequestTimeout,
    /// The request target (path and query) is longer than accepted.
    UriTooLong,
    /// The request's header fields are too many or too large.
    HeadersTooLarge,
    /// The request carries two different credentials.
    AmbiguousCredentials,
    /// The write queue is full; retry later.
    Overloaded,
    /// As many live tails are open as allowed (for the org, or on this server).
    TooManyTails,
    /// The store is unreachable or shutting down.
    Unavailable,
    /// A bug or an unexpected failure; details are logged, never sent.
    Internal,
}

impl ErrorKind {
    /// The status and the machine-readable code of each kind: the one table of the API.
    pub fn status_and_code(self) -> (StatusCode, &'static str) {
        match self {
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::RouteNotFound => (StatusCode::NOT_FOUND, "route_not_found"),
            ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ErrorKind::InvalidParameter => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ErrorKind::InvalidBody => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::InvalidRecords => (StatusCode::BAD_REQUEST, "invalid_records"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ErrorKind::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ErrorKind::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ErrorKind::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ErrorKind::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ErrorKind::AmbiguousCredentials => (StatusCode::BAD_REQUEST, "ambiguous_credentials"),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ErrorKind::TooManyTails => (StatusCode::TOO_MANY_REQUESTS, "too_many_tails"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// A problem with one record of an ingest batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The record's position in the batch (0-based).
    pub index: usize,
    /// The field at fault; `None` when the record as a whole is (e.g. not a JSON object).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Its kind, which fixes status and code.
    pub kind: ErrorKind,
    /// A human-readable sentence for the caller.
    pub message: String,
    /// The offending parameter or field, when one is at fault.
    pub param: Option<String>,
    /// Per-record problems (ingest) or per-field problems (JSON bodies).
    pub details: Vec<RecordError>,
    /// Seconds to wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = format!("{param} {}", message.into());
        Self {
            param: Some(param),
            ..Self::new(ErrorKind::InvalidParameter, message)
        }
    }

    /// A 400 for a JSON body whose fields failed validation.
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            param: errors.first().map(|e| e.field.clone()),
            details: errors
                .into_iter()
                .map(|e| RecordError {
                    index: 0,
                    field: Some(e.field),
                    message: e.message,
                })
                .collect(),
            ..Self::new(ErrorKind::InvalidBody, message)
        }
    }

    /// A 500 whose cause is logged here and never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, request_id = %context::request_id(), "internal error");
        Self::new(
            ErrorKind::Internal,
            "an internal error occurred; the request id identifies it in the server's logs",
        )
    }

    /// Status and code from the table.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        self.kind.status_and_code()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded { retry_after_secs } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::new(
                    ErrorKind::Overloaded,
                    "the write queue is full; retry after the Retry-After delay",
                )
            },
            StoreError::Closed => Self {
                retry_after: Some(1),
                ..Self::new(ErrorKind::Unavailable, "the server is shutting down")
            },
            StoreError::Conflict(what) => {
                Self::new(ErrorKind::Conflict, format!("{what} already exists"))
            }
            StoreError::Unavailable(cause) => {
                // The cause names the database host: logs only.
                tracing::warn!(error = %cause, request_id = %context::request_id(), "the database is unreachable");
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        ErrorKind::Unavailable,
                        "the database is unreachable; retry after the Retry-After delay",
                    )
                }
            }
            StoreError::Backend(cause) => Self::internal(&cause),
        }
    }
}

/// An error envelope: how one dialect writes an error body. The body is a type of its own,
/// which the OpenAPI document describes under its schema name, so the document and the wire
/// cannot differ.
pub trait Envelope: Send + Sync + 'static {
    /// The error body (its fields in the order they are written).
    type Body: Serialize + ToSchema;
    /// The body for `err`, given the request id of the call.
    fn body(err: &ApiError, request_id: &str) -> Self::Body;
}

/// apitrail's native envelope, also the logs and audit dialects' own ([`NativeErrorBody`]):
/// `{"error": {"code", "details"?, "message", "param"?}, "request_id"}`.
#[derive(Debug)]
pub enum Native {}

impl Envelope for Native {
    type Body = NativeErrorBody;

    fn body(err: &ApiError, request_id: &str) -> NativeErrorBody {
        let (_, code) = err.status_and_code();
        let records = err.kind == ErrorKind::InvalidRecords;
        let details = (records || !err.details.is_empty()).then(|| {
            err.details
                .iter()
                .map(|d| NativeErrorItem {
                    field: d.field.clone(),
                    index: records.then_some(d.index),
                    message: d.message.clone(),
                })
                .collect()
        });
        NativeErrorBody {
            error: NativeErrorDetail {
                code: code.to_owned(),
                details,
                message: err.message.clone(),
                param: err.param.clone(),
            },
            request_id: request_id.to_owned(),
        }
    }
}

/// The native error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct NativeErrorBody {
    error: NativeErrorDetail,
    /// The request id, also in the `X-Request-Id` header.
    request_id: String,
}

/// The error object of the native envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct NativeErrorDetail {
    /// Machine-readable code: `unauthorized`, `forbidden`, `not_found`, `route_not_found`,
    /// `method_not_allowed`, `invalid_parameter`, `invalid_request`, `invalid_records`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `overloaded`,
    /// `unavailable` or `internal_error`.
    code: String,
    /// Per-record problems of an ingest call (`index`, `field`, `message`), or per-field
    /// problems of a JSON body (`field`, `message`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    details: Option<Vec<NativeErrorItem>>,
    /// Human-readable explanation.
    message: String,
    /// The parameter or field at fault; absent when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    param: Option<String>,
}

/// One problem of a batch or body.
#[derive(Debug, Serialize, ToSchema)]
pub struct NativeErrorItem {
    /// The field at fault; null when the whole record is.
    #[schema(required = true)]
    field: Option<String>,
    /// The record's index in the batch (ingest only; absent for a body's fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 0)]
    index: Option<usize>,
    /// What is wrong.
    message: String,
}

/// The error code a response carried, kept for the self-log of the call.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// A handler's error, rendered in dialect `D`'s envelope.
#[derive(Debug)]
pub struct Failure<D>(pub ApiError, PhantomData<fn() -> D>);

impl<D> From<ApiError> for Failure<D> {
    fn from(e: ApiError) -> Self {
        Self(e, PhantomData)
    }
}

impl<D> From<StoreError> for Failure<D> {
    fn from(e: StoreError) -> Self {
        Self(e.into(), PhantomData)
    }
}

impl<D: Envelope> IntoResponse for Failure<D> {
    fn into_response(self) -> Response {
        render::<D>(&self.0)
    }
}

/// Renders `err` in envelope `D`, with the headers that go with it.
pub fn render<D: Envelope>(err: &ApiError) -> Response {
    let (status, code) = err.status_and_code();
    let request_id = context::request_id();
    let mut response = (status, axum::Json(D::body(err, &request_id))).into_response();
    let headers = response.headers_mut();
    if let Some(secs) = err.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if err.kind == ErrorKind::Unauthorized {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"apitrail\""),
        );
    }
    response.extensions_mut().insert(ErrorCode(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every envelope's bytes, key order included, as clients have always received them.
    #[test]
    fn envelopes_are_written_byte_for_byte() {
        use crate::dialects::{actions::Actions, keys::Keys, zoo::Zoo};
        fn bytes<D: Envelope>(err: &ApiError) -> String {
            serde_json::to_string(&D::body(err, "req_1")).unwrap_or_default()
        }
        let plain = ApiError::new(ErrorKind::NotFound, "no such org");
        let param = ApiError::param("limit", "must be 1-100");
        let fields = ApiError::fields(vec![
            FieldError::new("name", "is required"),
            FieldError::new("scopes", "must not be empty"),
        ]);
        let records = ApiError {
            details: vec![
                RecordError {
                    index: 0,
                    field: None,
                    message: "must be a JSON object".into(),
                },
                RecordError {
                    index: 3,
                    field: Some("method".into()),
                    message: "is required".into(),
                },
            ],
            ..ApiError::new(ErrorKind::InvalidRecords, "2 of 4 records are invalid")
        };
        let no_records = ApiError::new(ErrorKind::InvalidRecords, "none");
        for (got, want) in [
            (
                bytes::<Native>(&plain),
                r#"{"error":{"code":"not_found","message":"no such org"},"request_id":"req_1"}"#,
            ),
            (
                bytes::<Native>(&param),
                r#"{"error":{"code":"invalid_parameter","message":"limit must be 1-100","param":"limit"},"request_id":"req_1"}"#,
            ),
            (
                bytes::<Native>(&fields),
                r#"{"error":{"code":"invalid_request","details":[{"field":"name","message":"is required"},{"field":"scopes","message":"must not be empty"}],"message":"name is required; scopes must not be empty","param":"name"},"request_id":"req_1"}"#,
            ),
            (
                bytes::<Native>(&records),
                r#"{"error":{"code":"invalid_records","details":[{"field":null,"index":0,"message":"must be a JSON object"},{"field":"method","index":3,"message":"is required"}],"message":"2 of 4 records are invalid"},"request_id":"req_1"}"#,
            ),
            (
                bytes::<Native>(&no_records),
                r#"{"error":{"code":"invalid_records","details":[],"message":"none"},"request_id":"req_1"}"#,
            ),
            (
                bytes::<Zoo>(&param),
                r#"{"error_code":"invalid_parameter","message":"limit must be 1-100","request_id":"req_1"}"#,
            ),
            (
                bytes::<Keys>(&param),
                r#"{"code":400,"data":null,"message":"limit must be 1-100","requestId":"req_1"}"#,
            ),
            (
                bytes::<Actions>(&plain),
                r#"{"data":null,"errors":[{"code":"not_found","message":"no such org"}]}"#,
            ),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn an_unreachable_database_is_503_with_retry_after_and_no_detail() {
        let cause = std::io::Error::other("connect to db.internal:5432 refused");
        let err = ApiError::from(StoreError::unavailable(cause));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(err.retry_after, Some(1));
        assert!(!err.message.contains("db.internal"), "{}", err.message);
        let internal = ApiError::from(StoreError::backend(std::io::Error::other("boom")));
        assert_eq!(
            internal.status_and_code().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
