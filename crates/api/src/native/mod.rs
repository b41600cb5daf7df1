//! apitrail's own routes, in the native envelope.
//!
//! - [`admin`]: the operator API (`/admin/v1/...`) and an org admin's own keys
//!   (`/v1/api-keys`).
//! - [`ingest`]: `POST /v1/ingest/requests` and `POST /v1/ingest/audit-events`.
//! - [`actions`]: credentials, destinations, action definitions, triggering a record and
//!   signaling its outcome.
//! - [`tail`]: the live tails of request logs and the audit log (Server-Sent Events).

pub mod actions;
pub mod admin;
pub mod ingest;
pub mod tail;
