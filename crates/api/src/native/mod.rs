//! apitrail's own routes, in the native envelope.
//!
//! - [`admin`]: the operator API (`/admin/v1/...`) and an org admin's own keys
//!   (`/v1/api-keys`).
//! - [`ingest`]: `POST /v1/ingest/requests` and `POST /v1/ingest/audit-events`.
//! - [`export`]: `GET /v1/logs/export` and `GET /v1/audit-log/export`, streamed.
//! - [`actions`]: credentials, destinations, action definitions, triggering a record and
//!   signaling its outcome.
//! - [`stats`]: `GET /v1/logs/stats`, counts and latency percentiles per time bucket.
//! - [`tail`]: the live tails of request logs and the audit log (Server-Sent Events).
//! - [`timeline`]: `GET /v1/requests/{request_id}/timeline`, one request's records of every
//!   kind, in the dialects' items.
//! - [`viewer`]: viewer tokens (`/v1/viewer-tokens`) and `GET /v1/me`.

pub mod actions;
pub mod admin;
pub mod export;
pub mod ingest;
pub mod stats;
pub mod tail;
pub mod timeline;
pub mod viewer;
